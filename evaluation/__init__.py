"""The test protocol and everything that scores or shows a prediction: the protocol itself
(``protocol``: seeds, passes, targets, the summary over seeds), the meters (``metrics``), BAM's
generalised test (``gfss``), the baselines (``baselines``), episode recording and replay
(``episodes``), pictures (``visualisation``) and the predictor for one's own images
(``predictor``). It builds on ``experiment`` and is used by ``engine`` and the scripts."""

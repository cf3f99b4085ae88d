"""Episode datasets beyond PASCAL and COCO (util layer: imports only model/ and util/).

One module per concern; each serves the named items of util/episode.py, like util/dataset.SemData:

- ``class_folders``: class folders (FSS-1000's layout, and one's own: ``<root>/<class>/<id>.jpg`` +
  ``<id>.png``) with split files of class names; training episodes, and evaluation episodes drawn
  from the seed by HSNet's FSS-1000 rule so that they do not depend on the worker count.
- ``cross_domain``: the cross-domain benchmark of PATNet (Deepglobe, ISIC2018, Chest X-ray lung),
  evaluation episodes drawn from (seed, index) so that they do not depend on the worker count.
"""

"""Code shared by the tests (not tests themselves): paths, toy experiments, reference weights."""
import os

#: The repository root (the folder holding train_sccan.py, model/, util/, tools/, config/, lists/).
REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: tests/fixtures: the parity fixtures (SCCAN's and BAM's ensemble) and the reference state_dict name lists.
FIXTURES = os.path.join(REPOSITORY_ROOT, "tests", "fixtures")

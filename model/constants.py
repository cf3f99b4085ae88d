"""The constants that more than one part of the project must agree on, in one place."""

#: The label value no loss and no metric counts (PASCAL's object borders, the padding of a
#: resized image), as in the original and in BAM.
IGNORE_LABEL = 255

#: The original's guard in its cosine similarities and min-max normalisations (the prior mask of
#: model/sccan.py and the patch alignment of model/transformer.py): a zero vector or a constant
#: map gives 0 instead of a division by zero.
COSINE_EPS = 1e-7

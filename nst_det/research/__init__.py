"""What runs around the training library, never inside it: the two demos and their seed reports,
the distillation benchmark, the selectivity figures, the demo-data generator and the writers of
tiny data sets in the official VOC, COCO and ImageNet layouts. It imports the library; the
library never imports it (``tools/`` and ``datasets/`` do)."""

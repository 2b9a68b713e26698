"""Detection evaluation of nst_det: VOC and COCO evaluators for models, and evaluation of saved
COCO-format predictions files."""
from .evaluators import (  # noqa: F401
    COCO_STAT_NAMES,
    ClassMapEvaluator,
    COCODetectionEvaluator,
    VOCDetectionEvaluator,
    build_evaluator,
    coco_summary,
    voc_metrics,
)
from .predictions_eval import (  # noqa: F401
    check_predictions,
    contiguous_class_id,
    dataset_description,
    dataset_metadata,
    evaluate_predictions_coco,
    evaluate_predictions_file,
    evaluate_predictions_voc,
    load_coco_predictions,
    predictions_dataset,
    register_coco_ground_truth,
    register_voc_folder,
)
from .visualize import draw_predictions, predictions_to_instances  # noqa: F401

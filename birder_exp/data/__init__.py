"""Data on disk: the embedded digits image folder and the checks every image folder passes before training.

No torch here: the training layer (birder_exp.training.datamodule) turns these plans into datasets.
"""

from birder_exp.data.digits import write_digits
from birder_exp.data.folders import IMAGE_EXTENSIONS
from birder_exp.data.folders import FolderPlan
from birder_exp.data.folders import Sample
from birder_exp.data.folders import plan_image_folder
from birder_exp.data.folders import verify_images

__all__ = ["IMAGE_EXTENSIONS", "FolderPlan", "Sample", "plan_image_folder", "verify_images", "write_digits"]

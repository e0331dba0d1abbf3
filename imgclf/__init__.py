"""imgclf: transfer-learning image classification from search terms to a served model."""

from imgclf.errors import ImgclfError

__all__ = ["ImgclfError"]
__version__ = "0.1.0"

"""imgclf: transfer-learning image classification from search terms to a served model.

Importing the package registers the config resolver ``${imgclf.crop_size:BACKBONE}`` (the image
size a backbone's weights were evaluated at: 299 for Inception v3, 224 for most), the default
of ``data.image_size``, so that every entry point and test composing ``conf/`` can resolve it.
"""

from omegaconf import OmegaConf

from imgclf.errors import ImgclfError

__all__ = ["ImgclfError"]
__version__ = "0.1.0"


def _crop_size(backbone) -> int:
    from imgclf.models.backbones import default_image_size

    return default_image_size(backbone)


# not cached: the argument is a config node (model.backbone), which the cache cannot key on
OmegaConf.register_resolver("imgclf.crop_size", _crop_size, replace=True)

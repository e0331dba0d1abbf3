"""The network: backbones (torchvision, timm), the MLP head, the saved model file."""

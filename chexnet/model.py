"""The DenseNet121 graph that every engine runs (PyTorch side; imported only where torch is).

Forward returns ``(logits, features)`` where features is the post-ReLU map F that CAM uses; the
ONNX export keeps exactly these two outputs. Parameter names are torchvision's densenet121
(``features.*``, ``classifier.*``), so weights.pt is a plain torchvision state_dict.
"""

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

FEATURE_CHANNELS = 1024


class CheXNet(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        net = torchvision.models.densenet121(weights=None, num_classes=num_classes)
        self.features = net.features
        self.classifier = net.classifier

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Not in-place: the feature map is an output of its own.
        features = F.relu(self.features(x))
        logits = self.classifier(features.mean(dim=(2, 3)))
        return logits, features

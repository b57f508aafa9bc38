"""Image sets and tiny image teachers (a Hugging Face CNN and ViT, a torch.export program, timm models, a depthwise
ONNX stack): random weights and random pixels, for behaviour, not accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

LABELS = [f"c{i}" for i in range(6)]  # > 5 classes: top-5 is reported


def _ids():
    return {i: name for i, name in enumerate(LABELS)}


def write_image_set(root: Path) -> Path:
    """A class-folder image set (6 classes × 4 RGB images of different sizes) in ROOT/set and the same as ROOT/set.npz."""
    from PIL import Image

    rng = np.random.default_rng(0)
    arrays, labels = [], []
    for c, name in enumerate(LABELS):
        (root / "set" / name).mkdir(parents=True)
        for k in range(4):
            arr = rng.integers(0, 256, (20 + 3 * k, 24, 3), dtype=np.uint8)
            arr[:, :, c % 3] = 40 * c  # a class signal
            Image.fromarray(arr).save(root / "set" / name / f"{k}.png")
            arrays.append(np.asarray(Image.fromarray(arr).resize((16, 16))))
            labels.append(c)
    np.savez(root / "set.npz", images=np.stack(arrays), labels=np.asarray(labels))
    return root


def write_program_teacher(directory: Path) -> Path:
    """A plain nn.Module (conv, BatchNorm, linear) saved with torch.export, 16×16 grey, with its model.yaml."""
    import torch
    import yaml

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(8)
            self.fc = torch.nn.Linear(8, len(LABELS))

        def forward(self, x):
            return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))

    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(Net().eval(), (torch.randn(2, 1, 16, 16),), dynamic_shapes=({0: batch},))
    directory.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, directory / "model.pt2")
    (directory / "model.yaml").write_text(yaml.safe_dump({
        "task": "image-classification", "labels": LABELS,
        "preprocess": {"size": [16, 16], "channels": "L", "mean": [0.5], "std": [0.5]}}))
    return directory


def write_hf_image_teachers(root: Path, vit_layers: int = 2) -> dict[str, Path]:
    """A tiny MobileNetV2 (32×32 RGB) and a tiny ViT (16×16, ``vit_layers`` layers), random, with their image
    processors."""
    import torch
    import transformers

    torch.manual_seed(0)
    common = dict(num_labels=len(LABELS), id2label=_ids(), label2id={v: k for k, v in _ids().items()})
    cnn = transformers.MobileNetV2ForImageClassification(transformers.MobileNetV2Config(
        num_channels=3, image_size=32, depth_multiplier=0.35, tf_padding=False, **common)).eval()
    with torch.no_grad():  # random BatchNorm statistics, so the logits are not all ~0
        for m in cnn.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    cnn.save_pretrained(root / "cnn")
    transformers.MobileNetV2ImageProcessor(size={"shortest_edge": 36},
                                           crop_size={"height": 32, "width": 32}).save_pretrained(root / "cnn")
    vit = transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=vit_layers, num_attention_heads=2,
        intermediate_size=64, **common)).eval()
    vit.save_pretrained(root / "vit")
    transformers.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(root / "vit")
    return {"cnn": root / "cnn", "vit": root / "vit"}


#: architecture -> (model arguments, input size): a MobileNetV3, an EfficientNet, a ResNet, a ViT
MODELS = {
    "mobilenetv3_small_050": ({}, 48),
    "efficientnet_b0": ({}, 48),
    "resnet10t": ({}, 48),
    "vit_tiny_patch16_224": ({"img_size": 32}, 32),
}


def save_timm(directory, arch: str, labels=("cat", "dog", "fox")):
    """A random timm model of ``arch`` saved in timm's hub format (``save_for_hf``) with its label names."""
    import timm
    import torch
    from timm.models import save_for_hf

    args, size = MODELS[arch]
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=len(labels), **args,
                              pretrained_cfg_overlay={"input_size": (3, size, size), "crop_pct": 0.875})
    save_for_hf(model.eval(), str(directory), model_config={"label_names": list(labels)}, safe_serialization=True)
    return directory


def _depthwise_relu6_program(directory: Path) -> Path:
    import torch
    import yaml

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.pw = torch.nn.Conv2d(8, 16, 1)
            self.fc = torch.nn.Linear(16, 4)

        def forward(self, x):
            x = torch.nn.functional.relu6(self.stem(x))
            x = torch.nn.functional.relu6(self.dw(x))
            x = self.pw(x) + 0.0
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        # depthwise channel 0 carries weights 10^4 times larger than the rest, on an input 10^4 times smaller (what
        # BatchNorm folding leaves); the head ignores what comes of it, and no bias hides the other channels' signal
        net.stem.weight[0] *= 1e-4
        net.stem.bias[0] = 0.0
        net.dw.weight[0] *= 1e4
        net.pw.weight[:, 0] = 0.0
        net.pw.bias.zero_()
        net.fc.bias.zero_()
    batch = torch.export.Dim("batch", min=1, max=256)
    program = torch.export.export(net, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    directory.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, directory / "model.pt2")
    (directory / "model.yaml").write_text(yaml.safe_dump({
        "task": "image-classification", "labels": ["a", "b", "c", "d"],
        "preprocess": {"size": [16, 16], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    return directory


def depthwise_stack(root: Path, images: int) -> dict[str, Path]:
    """The depthwise/ReLU6 program exported to ONNX, with ``images`` seeded noise images in an ``.npz``."""
    from compress.stages.export import export

    rng = np.random.default_rng(0)
    np.savez(root / "images.npz", images=rng.integers(0, 256, (images, 16, 16, 3), dtype=np.uint8))
    teacher = _depthwise_relu6_program(root / "teacher")
    return {"onnx": export(teacher, root / "onnx").path, "images": root / "images.npz"}

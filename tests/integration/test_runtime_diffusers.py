"""The diffusers runtime on a tiny randomly initialised Stable Diffusion pipeline built here (no
hub): PNG bytes of the asked size, deterministic for a seed, progress, parameter checks, and a
repository's own pipeline code never loaded."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferd.core.errors import InvalidInput, ModelLoadError, UntrustedArtifact
from inferd.core.spec import ModelSpec
from inferd.runtimes import detect_runtime, runtime_class
from inferd.runtimes.diffusers import DiffusersRuntime

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_pipeline(path: Path) -> Path:
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
        norm_num_groups=4, attention_head_dim=4,
    )  # fmt: skip
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, sample_size=16,
    )  # fmt: skip
    text_encoder = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            bos_token_id=0, eos_token_id=2, pad_token_id=1, vocab_size=100, hidden_size=16,
            intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, projection_dim=16,
            max_position_embeddings=77,
        )
    )  # fmt: skip
    vocab = {"<|startoftext|>": 0, "!": 1, "<|endoftext|>": 2}
    for i, c in enumerate("abcdefghijklmnopqrstuvwxyz"):
        vocab[c] = 3 + i
        vocab[c + "</w>"] = 30 + i
    tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    scheduler = diffusers.DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip
    pipe = diffusers.StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_pipeline(tmp_path_factory.mktemp("repo") / "sd" / "1")


@pytest.fixture(scope="module")
def runtime(pipeline_dir: Path) -> DiffusersRuntime:
    assert detect_runtime(pipeline_dir) == "diffusers"
    rt = runtime_class("diffusers")(ModelSpec(name="sd"), "1", pipeline_dir)
    rt.load()
    assert isinstance(rt, DiffusersRuntime)
    return rt


def generate(rt: DiffusersRuntime, *prompts: str, **params: Any) -> list[bytes]:
    out = rt.infer({"prompt": np.array([p.encode() for p in prompts], dtype=object)}, None, params)
    assert set(out) == {"image"} and out["image"].shape == (len(prompts),)
    return list(out["image"])


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, and the file must decode."""
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    try:
        from PIL import Image
    except ImportError:
        return width, height
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.size == (width, height) and image.mode == "RGB"
    return width, height


def test_signature(runtime: DiffusersRuntime) -> None:
    inputs, outputs = runtime.signature()
    assert [(t.name, t.datatype, t.shape, t.optional) for t in inputs] == [
        ("prompt", "BYTES", (-1,), False),
        ("negative_prompt", "BYTES", (-1,), True),
    ]
    assert [t.to_dict() for t in outputs] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]


def test_png_of_the_asked_size_and_default_size(runtime: DiffusersRuntime) -> None:
    (image,) = generate(runtime, "a cat", num_inference_steps=2, height=32, width=24, seed=3)
    assert png_size(image) == (24, 32)
    (default,) = generate(runtime, "a cat", num_inference_steps=2, seed=3)
    assert png_size(default) == (16, 16)  # unet sample_size 8 x vae scale factor 2


def test_same_seed_same_bytes_other_seed_other_bytes(runtime: DiffusersRuntime) -> None:
    params = {"num_inference_steps": 3, "height": 16, "width": 16, "guidance_scale": 5.0}
    a = generate(runtime, "a red cat", "a dog", seed=7, **params)
    b = generate(runtime, "a red cat", "a dog", seed=7, **params)
    c = generate(runtime, "a red cat", "a dog", seed=8, **params)
    assert a == b
    assert a[0] != c[0] and a[1] != c[1]
    assert a[0] != a[1]
    negative = runtime.infer(
        {
            "prompt": np.array([b"a red cat"], dtype=object),
            "negative_prompt": np.array([b"blurry"], dtype=object),
        },
        None,
        {"seed": 7, **params},
    )["image"]
    assert png_size(negative[0]) == (16, 16) and negative[0] != a[0]


def test_progress_advances_through_the_steps(runtime: DiffusersRuntime) -> None:
    seen: list[tuple[int, int]] = []
    pipe = runtime._pipe
    original = pipe.unet.forward

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(runtime.progress)
        return original(*args, **kwargs)

    pipe.unet.forward = spy
    try:
        generate(runtime, "a cat", num_inference_steps=4, height=16, width=16, seed=1)
    finally:
        del pipe.unet.forward
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert runtime.progress == (4, 4)


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"height": 30}, "height"),
        ({"width": 4}, "width"),
        ({"width": 4096}, "width"),
        ({"height": "big"}, "height"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 201}, "num_inference_steps"),
        ({"guidance_scale": -1}, "guidance_scale"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_parameters_name_the_parameter(
    runtime: DiffusersRuntime, params: dict[str, Any], name: str
) -> None:
    with pytest.raises(InvalidInput, match=f"parameter '{name}'"):
        generate(runtime, "a cat", **params)


def test_bad_negative_prompt_count(runtime: DiffusersRuntime) -> None:
    with pytest.raises(InvalidInput, match="'negative_prompt' must hold one text or one per"):
        runtime.infer(
            {
                "prompt": np.array([b"a", b"b", b"c"], dtype=object),
                "negative_prompt": np.array([b"x", b"y"], dtype=object),
            },
            None,
            {"num_inference_steps": 1},
        )


def copy_of(src: Path, dst: Path) -> Path:
    for item in src.rglob("*"):
        if item.is_file():
            target = dst / item.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(item.read_bytes())
    return dst


def test_custom_pipeline_code_is_refused(pipeline_dir: Path, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    path = copy_of(pipeline_dir, tmp_path / "evil" / "1")
    (path / "pipeline_evil.py").write_text(
        f"from pathlib import Path\nPath({str(canary)!r}).write_text('ran')\n"
        "from diffusers import StableDiffusionPipeline\n"
        "class EvilPipeline(StableDiffusionPipeline):\n    pass\n"
    )
    index = json.loads((path / "model_index.json").read_text())
    for name, change in (
        ("_class_name", ["pipeline_evil", "EvilPipeline"]),
        ("_class_name", "EvilPipeline"),
        ("unet", ["pipeline_evil", "EvilUNet"]),
    ):
        (path / "model_index.json").write_text(json.dumps({**index, name: change}))
        with pytest.raises(ModelLoadError, match="never"):
            DiffusersRuntime(ModelSpec(name="evil"), "1", path).load()
    assert not canary.exists()


def test_pickle_weights_need_trust(pipeline_dir: Path, tmp_path: Path) -> None:
    path = copy_of(pipeline_dir, tmp_path / "pickled" / "1")
    weights = next((path / "unet").glob("*.safetensors"))
    weights.unlink()
    (path / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(UntrustedArtifact, match=r"unet/diffusion_pytorch_model\.bin is a pickle"):
        DiffusersRuntime(ModelSpec(name="p"), "1", path).load()

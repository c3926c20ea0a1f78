"""Fusing into a quantized base: the share of the adapters' effect that
survives is measured, and a fuse that loses it is refused (--dequantize keeps it)."""

import mlx.core as mx
import mlx_lm
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from mlx_align.cli import main
from mlx_align.model.adapters import attach_adapters, quantize_base, save_adapters
from mlx_align.model.fuse import fuse_adapters
from mlx_align.model.load import save_full_model

LORA = {
    "fine_tune_type": "lora",
    "num_layers": -1,
    "lora_parameters": {"rank": 4, "scale": 2.0, "dropout": 0.0},
}


def adapters_on(base_dir, out, lora_b_scale: float):
    """Random adapters on ``base_dir``'s model whose lora_b entries are ~``lora_b_scale``."""
    model, _ = mlx_lm.load(str(base_dir))
    attach_adapters(model, LORA)
    key = iter(mx.random.split(mx.random.key(1), 64))
    updates = [
        (name, lora_b_scale * mx.random.normal(value.shape, key=next(key)))
        for name, value in tree_flatten(model.trainable_parameters())
        if name.endswith("lora_b")
    ]
    model.update(tree_unflatten(updates))
    save_adapters(model, LORA, out)
    return out


@pytest.fixture(scope="module")
def quantized_base(tiny_model, tmp_path_factory):
    """The tiny model quantized on disk to 4 bits, group 32."""
    model, tokenizer, config = mlx_lm.load(str(tiny_model), return_config=True)
    quantize_base(model, 4, group_size=32)
    config["quantization"] = {"group_size": 32, "bits": 4}
    out = tmp_path_factory.mktemp("q4") / "base"
    return save_full_model(out, str(tiny_model), model, tokenizer, config)


def test_small_adapters_lost_in_a_quantized_fuse_are_refused(
    quantized_base, tmp_path, capsys
):
    adapters = adapters_on(quantized_base, tmp_path / "a", lora_b_scale=1e-3)
    args = ["fuse", "--model", str(quantized_base), "--adapter-path", str(adapters)]
    with pytest.raises(SystemExit) as stop:
        main([*args, "--save-path", str(tmp_path / "fused")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        err.startswith("error: --model: the base is quantized")
        and "--dequantize" in err
    )
    assert not (tmp_path / "fused").exists()  # nothing written
    main([*args, "--save-path", str(tmp_path / "exact"), "--dequantize"])
    out = capsys.readouterr().out
    kept = float(out.split("adapters' effect kept: ")[1].split("%")[0])
    assert kept > 99.0


def test_fusing_into_a_float_base_keeps_the_adapters(tiny_model, tmp_path, capsys):
    adapters = adapters_on(tiny_model, tmp_path / "a", lora_b_scale=1e-2)
    fuse_adapters(str(tiny_model), str(adapters), str(tmp_path / "fused"))
    kept = capsys.readouterr().out.split("adapters' effect kept: ")[1]
    assert float(kept.split("%")[0]) > 99.0
    effect = float(kept.split("adapters ")[1].split(";")[0])
    assert effect > 1e-3  # the adapters do move the logits

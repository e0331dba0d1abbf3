"""python scripts/export.py [quantize=int8] [overrides] -- see conf/export.yaml."""

import hydra
from omegaconf import DictConfig

from imgclf.cli import run


def report(result: dict) -> None:
    from imgclf.runtimes import describe_check

    onnx = result["onnx"]
    state = "verified" if onnx["check"]["verified"] else "NOT verified (runtime=auto will not use it)"
    print(f"model: {onnx['path']} (opset {onnx['opset']})")
    print(f"check: {describe_check(onnx['check'])}: {state}")
    int8 = result.get("int8")
    if int8 is None:
        return
    if int8["kept"]:
        print(f"int8 model: {int8['path']}")
        print(f"int8 check: {describe_check(int8['check'])}: verified")
    else:
        print(int8["message"])


@hydra.main(config_path="../conf", config_name="export")
def main(cfg: DictConfig):
    from imgclf.export import export

    result = run(export, cfg)
    report(result)
    return result


if __name__ == "__main__":
    main()

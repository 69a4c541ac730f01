"""`make venv`'s last step: torchvision's compiled operators work only beside the torch they were
built for. pip can end with another pair installed (a wheel cache, an index serving only some
builds), and the error then surfaces much later, inside timm — so say it now, in one line.
Run as a script (`python src/medalist/core/torch_pair.py`): it imports nothing of medalist."""
import importlib.metadata as md
import sys

from packaging.requirements import Requirement


def main() -> None:
    torch_v, vision_v = md.version("torch"), md.version("torchvision")
    wants = [r for r in map(Requirement, md.requires("torchvision") or []) if r.name == "torch" and not r.marker]
    try:
        import torchvision  # noqa: F401 — a mismatched pair fails here ("operator torchvision::nms does not exist")
        problem = next((f"it wants {r}" for r in wants if not r.specifier.contains(torch_v, prereleases=True)), "")
    except Exception as e:  # noqa: BLE001 — any import failure is the message
        problem = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if problem:
        sys.exit(f"error: torchvision {vision_v} does not work with torch {torch_v} ({problem}): "
                 "install the pair requirements.txt pins (rm -rf .venv && make venv)")


if __name__ == "__main__":
    main()

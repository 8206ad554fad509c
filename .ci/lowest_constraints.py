"""Print pip constraints pinning each `>=` floor in pyproject's [project].dependencies.

Used by .ci/lowest, so the tested floors are exactly the declared ones.
torchvision is not a direct dependency (timm pulls it in), but it must match torch:
torch 2.N pairs with torchvision 0.(N+15).
"""

import re
import sys
from pathlib import Path

import tomllib

pyproject = Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml")
deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
for dep in deps:
    m = re.fullmatch(r"\s*([A-Za-z0-9._-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][0-9.]*)\s*(?:,.*)?", dep)
    if not m:
        continue  # no floor to pin
    name, floor = m.groups()
    print(f"{name}=={floor}")
    if name == "torch":
        minor = int(floor.split(".")[1])
        print(f"torchvision==0.{minor + 15}.*")

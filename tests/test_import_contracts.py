"""The import-linter contracts (pyproject.toml ``[tool.importlinter]``) cover today's layout:

* every top-level module and package of ``napari_sam_med`` sits in the "Layers point down"
  contract;
* every sub-package has a contract of its own (a ``layers`` contract with it as container, or an
  ``independence`` contract over its modules), and a container's layers name each of its modules.

``lint-imports`` checks that the code keeps the contracts; this test checks that the contracts
keep up with the code (a new module must be placed, not silently left out). Files only, nothing
of the package is imported.
"""

from __future__ import annotations

import re

import tomllib

from tests.test_structure import PACKAGE, ROOT, modules

TOP_CONTRACT = "Layers point down"


def _contracts() -> list[dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return config["tool"]["importlinter"]["contracts"]


def _layer_names(layers: list[str]) -> set[str]:
    """Module names in layer strings such as ``"(a) | b"`` or ``"a : b"``."""
    return {name for layer in layers for name in re.findall(r"[\w.]+", layer)}


def _children(package: str) -> set[str]:
    """Direct submodules and sub-packages of ``package`` (dunder modules left out)."""
    prefix = package + "."
    return {
        name[len(prefix) :].split(".")[0]
        for name in modules()
        if name.startswith(prefix) and not name[len(prefix) :].startswith("__")
    }


def _packages() -> set[str]:
    """Dotted names of the package's sub-packages (folders with an ``__init__.py``)."""
    return {
        ".".join(path.relative_to(ROOT).parent.parts)
        for path in (ROOT / PACKAGE).rglob("__init__.py")
    } - {PACKAGE}


def test_every_top_level_module_is_in_the_layers() -> None:
    top = next(c for c in _contracts() if c["name"] == TOP_CONTRACT)
    placed = {n.removeprefix(PACKAGE + ".") for n in _layer_names(top["layers"])}
    assert _children(PACKAGE) - placed == set(), f"add them to {TOP_CONTRACT!r} in pyproject.toml"


def test_every_sub_package_has_a_contract_naming_its_modules() -> None:
    contracts = _contracts()
    layered = {c["containers"][0]: c for c in contracts if c.get("containers")}
    independent = {
        m.rsplit(".", 1)[0]: c
        for c in contracts
        if c["type"] == "independence"
        for m in c["modules"]
    }
    missing = sorted(_packages() - set(layered) - set(independent))
    assert missing == [], f"sub-packages without an import contract in pyproject.toml: {missing}"
    for package, contract in layered.items():
        left_out = _children(package) - _layer_names(contract["layers"])
        assert left_out == set(), f"{contract['name']!r}: place {sorted(left_out)} in its layers"
    for package, contract in independent.items():
        named = {m.rsplit(".", 1)[1] for m in contract["modules"]}
        left_out = _children(package) - named
        assert left_out == set(), f"{contract['name']!r}: add {sorted(left_out)} to its modules"

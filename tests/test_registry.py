import pytest

from landscape.errors import LandscapeError
from landscape.registry import Registry, UnknownNameError


def test_register_lookup_aliases_and_normalization():
    reg: Registry[int] = Registry("thing")
    reg.register("alpha", "a")(1)
    reg.register("beta_gamma")(2)
    assert reg["alpha"] == reg["a"] == reg[" Alpha "] == 1
    assert reg["beta-gamma"] == 2
    assert reg.names() == ["alpha", "beta_gamma"]
    assert reg.aliases("alpha") == ["a"]
    assert "a" in reg and "zeta" not in reg and 3 not in reg
    assert len(reg) == 2 and list(reg) == ["alpha", "beta_gamma"]


def test_unknown_name_lists_valid_names():
    reg: Registry[int] = Registry("optimizer")
    reg.register("sgd")(1)
    reg.register("sam")(2)
    with pytest.raises(UnknownNameError) as info:
        reg["adamz"]
    assert isinstance(info.value, LandscapeError)
    assert str(info.value) == "unknown optimizer 'adamz'; valid optimizer names: sam, sgd"


def test_duplicate_registration_is_refused():
    reg: Registry[int] = Registry("thing")
    reg.register("x", "y")(1)
    with pytest.raises(ValueError):
        reg.register("y")(2)

"""The management error codes are one table with one meaning per code: a
client (sipsuite-ctl, an operator's script) acts on the number alone."""

from __future__ import annotations

from sipsuite.ops import errors


def test_application_codes_are_pinned() -> None:
    # Documented in docs/operations.md; changing one breaks clients.
    assert (errors.USER_EXISTS, errors.NO_SUCH_USER, errors.STORE_UNAVAILABLE) == (
        -32001, -32002, -32003)
    assert (errors.NOT_IN_USE, errors.REFUSED, errors.NO_SUCH_ENTRY) == (-32010, -32011, -32012)


def test_every_code_has_one_name() -> None:
    codes = {name: value for name, value in vars(errors).items()
             if name.isupper() and isinstance(value, int)}
    assert len(set(codes.values())) == len(codes), codes
    for name, value in codes.items():
        # JSON-RPC's reserved range, or the one it leaves to servers.
        assert -32768 <= value <= -32000, name


def test_the_modules_answer_with_the_table() -> None:
    from sipsuite.ops.ctl import cli
    from sipsuite.proxy.modules.dispatcher import dispatcher

    assert (dispatcher.NO_DISPATCHER, dispatcher.LIST_REFUSED, dispatcher.NO_DESTINATION) == (
        errors.NOT_IN_USE, errors.REFUSED, errors.NO_SUCH_ENTRY)
    assert cli.METHOD_NOT_FOUND == errors.METHOD_NOT_FOUND

"""What a failed `dmdr` command shows the user."""


def error_line(result) -> str:
    """The failed command's one message line, after checking there is exactly one and it starts "error:".

    Progress bars that libraries draw while a model loads are redrawn in place with carriage returns and
    are not messages: lines holding one are set aside.
    """
    lines = [line for line in result.stderr.split("\n") if line.strip() and "\r" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one 'error:' line, got {result.stderr!r}"
    return lines[0]

from __future__ import annotations

import pytest

from devtools.fake_gateway import main, parse_keys_file


def test_a_keys_file_gives_one_key_a_line_and_skips_comments_and_blanks():
    text = "# demo keys\n\nus-east-1#a:secret-a\n  us-east-1#b:se:cr,et-b  \n"

    assert parse_keys_file(text) == {"us-east-1#a": "secret-a", "us-east-1#b": "se:cr,et-b"}


def test_a_bad_line_is_named_by_number_and_its_secret_never_shown():
    with pytest.raises(ValueError, match="line 2 ") as raised:
        parse_keys_file("us-east-1#a:ok\nno-colon-PLANTED\n")

    assert "PLANTED" not in str(raised.value)


def test_a_missing_keys_file_stops_the_gateway_with_the_command_that_writes_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--port", "0", "--keys-file", str(tmp_path / "absent.txt")])

    assert exited.value.code == 2
    assert "load_demo_data" in capsys.readouterr().err

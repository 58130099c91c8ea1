"""`hfkd report` refuses bad input with one line and exit status 2, writing nothing."""

from __future__ import annotations

import pytest

from hfkd.app.report_cli import main


def test_a_missing_model_folder_is_one_line_and_writes_nothing(tmp_path, capsys) -> None:
    output = tmp_path / "report"
    with pytest.raises(SystemExit) as exited:
        main(["--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "missing_student"),
              "--output_dir", str(output)])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such folder" in err[0] and "missing_student" in err[0]
    assert not output.exists()

"""`python -m savi_cli`: the savi command, for launchers that start a module (`accelerate launch -m savi_cli ...`)."""

from savi_cli.main import app

app()

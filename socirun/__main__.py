from socirun.cli import run

run()

from socirun.commands.main import run

run()

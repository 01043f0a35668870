"""The commands: argv → one frozen options value → the engine with the chosen face; one error shell."""

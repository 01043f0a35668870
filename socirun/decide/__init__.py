"""Pure decisions over fact types: the plan (snapshotter, mode, reasons) and the transfer. No adapter, engine
or face is imported here (tests/unit/test_layers.py checks it)."""

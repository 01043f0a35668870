"""Running containers: the OCI spec builder (pure), GPUs, CNI networking, volumes and the task lifecycle."""

"""ddpipe: dataset distillation as DVC stages. One module per stage; shared code in sub-packages."""

"""What the console scripts of :mod:`rank_sweep.cli` run besides the study and the trial: the check of the
command line against the composed config (:mod:`~rank_sweep.commands.overrides`) and the select command
(:mod:`~rank_sweep.commands.select`). They sit above everything else: they may import any part of the package,
and no part of it imports them."""

"""Which generator made an image: the optional attribution head's classes
(`classes`), its open-set "unknown generator" rule fitted on the dev split
(`openset`), and its evaluation (`evaluation`: closed-set accuracy, confusion,
open-set AUROC per unseen family)."""

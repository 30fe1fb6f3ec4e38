"""Distribution matching: DMD loss, fake-score loss and the DynaDG / DynaRS step schedules."""

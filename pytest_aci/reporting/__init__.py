"""What a run leaves: ``jsonl`` (the case record and the report file), ``summary`` (rates, tables),
``baseline`` (the gate against a previous run), ``html`` (the page and the depth plot of ``aci report``)."""

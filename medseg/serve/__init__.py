"""``medseg serve``: a DICOM node that segments the series a PACS sends it.

A Store SCP spools every instance (:mod:`~medseg.serve.receiver`,
:mod:`~medseg.serve.spool`), pollers fetch new series from DICOMweb servers into the
same spool by the same path (:mod:`~medseg.serve.poller`,
:mod:`~medseg.serve.dicomweb`), a SQLite queue keeps each series' state
(:mod:`~medseg.serve.state`), a scheduler marks series complete once quiet and routes
them, one worker predicts with models loaded once (:mod:`~medseg.serve.worker`), and
a delivery thread sends the results back by C-STORE, STOW-RS or into folders
(:mod:`~medseg.serve.delivery`), retrying while a destination is down. The
configuration is a YAML file checked by a JSON schema (:mod:`~medseg.serve.config`).
"""

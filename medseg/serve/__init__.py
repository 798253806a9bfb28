"""``medseg serve``: a DICOM node that segments the series a PACS sends it.

A Store SCP spools every instance (:mod:`~medseg.serve.receiver`,
:mod:`~medseg.serve.spool`), a SQLite queue keeps each series' state
(:mod:`~medseg.serve.state`), a scheduler marks series complete once quiet and routes
them, one worker predicts with models loaded once (:mod:`~medseg.serve.worker`), and
a delivery thread sends the results back by C-STORE or into folders
(:mod:`~medseg.serve.delivery`), retrying while a destination is down. The
configuration is a YAML file checked by a JSON schema (:mod:`~medseg.serve.config`).

Designed for, not yet built: DICOMweb polling (QIDO-RS for new series, WADO-RS to
fetch them) would be one more producer of the same ``spool/incoming`` files and
``record_instance`` calls; STOW-RS one more kind of destination in
:mod:`~medseg.serve.delivery`.
"""

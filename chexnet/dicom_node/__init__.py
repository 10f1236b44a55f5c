"""``python -m chexnet dicom-node`` (DESIGN.md "DICOM results and the DICOM node"): a DICOM listener that
PACS and modalities push CR/DX images to. Each received instance is written to a spool directory before
the C-STORE is answered; a worker predicts through the same core as the REST API (licensed by the
node's token file) and stages the SR and heatmap captures in the spool; a sender stores them at the
configured destination with retries and backoff. A crash or restart loses nothing accepted."""

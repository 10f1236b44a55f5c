"""Site calibration (``python -m chexnet calibrate``): run a bundle exactly as the service does over a folder of
the site's labelled radiographs, choose per class the threshold that meets the site's target, and write
``site-thresholds.json`` (chexnet.site_thresholds) and a report a clinician can read. Not to be confused with
chexnet.bundle.calibration, the images a reduced-precision variant is measured on."""

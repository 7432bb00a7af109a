"""The control service's HTTP routes, one module per resource (jobs, data, models, secrets): they
check a request, hand it to the store or the upload store (:mod:`..storage`, :mod:`..archives`),
and shape the answer."""

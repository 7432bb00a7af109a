"""What the services share: settings, the job store, the task queues, the worker loop, logging."""

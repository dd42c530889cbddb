"""flowfield's HTTP service: FastAPI app, scheduler, update queues, learner, metrics."""

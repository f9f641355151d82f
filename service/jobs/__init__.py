"""Few-shot tuning jobs: plan a request, store the job, run it in a job process."""

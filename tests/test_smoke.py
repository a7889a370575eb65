def test_enqueue_run_complete(instance):
    job_id = instance.enqueue("echo hello; echo oops >&2")
    pool = instance.start_pool(1, "--burst")
    assert pool.wait(timeout=60) == 0
    job = instance.job(job_id)
    assert job["state"] == "completed"
    assert job["history"][0]["stdout"] == "hello\n"
    assert job["history"][0]["stderr"] == "oops\n"

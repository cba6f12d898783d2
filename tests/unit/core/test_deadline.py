"""The deadline that limits a cell or an export in the main thread."""

import threading
import time

import pytest

from harness.core.deadline import deadline


class OutOfTime(BaseException):
    pass


def test_the_time_limit_holds_when_its_first_alarm_lands_in_a_finaliser():
    # A signal handler that runs inside __del__ or a gc callback has its exception printed and dropped; the limit
    # must still end the block rather than let the export run on.
    swallowed = 0
    start = time.perf_counter()
    with pytest.raises(OutOfTime):
        with deadline(0.02, OutOfTime):
            while time.perf_counter() - start < 5:
                try:
                    time.sleep(0.001)
                except OutOfTime:
                    if swallowed:
                        raise
                    swallowed += 1  # what a finaliser does with the first alarm
    assert swallowed == 1
    assert time.perf_counter() - start < 1


def test_a_block_that_finishes_in_time_leaves_no_alarm_behind():
    with deadline(0.05, OutOfTime):
        pass
    time.sleep(0.1)  # an alarm left armed would raise here


def test_outside_the_main_thread_the_block_runs_without_a_limit():
    finished = []

    def work():
        with deadline(0.01, OutOfTime):
            time.sleep(0.05)
        finished.append(True)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert finished == [True]

package qmp

import "time"

// pollBound is how long one monitor reply may take while a job that ran
// for job runs beside it: half the job's own duration, since a monitor
// that waited for the job keeps a poll waiting about as long as the job;
// and never less than ten times the slowest reply with no job running
// (idle), so that a job too short to tell stays within the host's own
// noise. Both grow with a loaded machine, which a fixed bound (100 or
// 400 ms before) does not: a loaded CI host failed those with no job
// involved.
func pollBound(job, idle time.Duration) time.Duration { return max(job/2, 10*idle) }

// idleWorst is the slowest of 20 replies to poll with no job running.
func idleWorst(poll func()) time.Duration {
	var worst time.Duration
	for range 20 {
		start := time.Now()
		poll()
		worst = max(worst, time.Since(start))
	}
	return worst
}

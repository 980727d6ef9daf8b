package control

import (
	"sync"
	"time"
)

// JobStatus is a job's place in its life cycle; the values are QEMU's
// JobStatus (qapi/job.json), which are also the state machine's names.
type JobStatus string

// Job statuses.
const (
	JobCreated   JobStatus = "created"
	JobRunning   JobStatus = "running"
	JobWaiting   JobStatus = "waiting"
	JobPending   JobStatus = "pending"
	JobAborting  JobStatus = "aborting"
	JobConcluded JobStatus = "concluded"
	JobNull      JobStatus = "null"
)

// JobType says what a job does.
type JobType string

// Job types.
const (
	JobSnapshotSave   JobType = "snapshot-save"
	JobSnapshotLoad   JobType = "snapshot-load"
	JobSnapshotDelete JobType = "snapshot-delete"
)

// JobInfo is one job as query-jobs shows it.
type JobInfo struct {
	ID              string
	Type            JobType
	Status          JobStatus
	CurrentProgress uint64
	TotalProgress   uint64
	Err             error // why it failed; nil when it did not
}

type job struct {
	info      JobInfo
	cancelled bool
	done      chan struct{}
}

// Jobs runs long operations beside the monitor with QEMU's job life
// cycle: created -> running -> waiting -> pending -> concluded on success,
// running -> aborting -> concluded on failure, and null once dismissed.
// Jobs are created with manual dismiss, as the snapshot jobs are in QEMU.
type Jobs struct {
	mu    sync.Mutex
	jobs  map[string]*job
	order []string
	emit  func(Event)
}

// NewJobs makes a job manager that reports status changes through emit.
func NewJobs(emit func(Event)) *Jobs {
	return &Jobs{jobs: map[string]*job{}, emit: emit}
}

// idWellFormed is QEMU's rule for user-chosen ids: a letter first, then
// letters, digits, '-', '.', '_'.
func idWellFormed(id string) bool {
	if id == "" {
		return false
	}
	for i, c := range id {
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !(letter || i > 0 && (c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_')) {
			return false
		}
	}
	return true
}

func (js *Jobs) setStatus(j *job, s JobStatus) {
	j.info.Status = s
	js.emit(Event{Kind: EventJobStatus, JobID: j.info.ID, JobStatus: s, Time: time.Now()})
}

// JobCtx is what a running job sees of itself.
type JobCtx struct {
	js *Jobs
	j  *job
}

// Progress sets the job's progress counters.
func (c JobCtx) Progress(cur, total uint64) {
	c.js.mu.Lock()
	c.j.info.CurrentProgress, c.j.info.TotalProgress = cur, total
	c.js.mu.Unlock()
}

// Cancelled reports whether job-cancel was called.
func (c JobCtx) Cancelled() bool {
	c.js.mu.Lock()
	defer c.js.mu.Unlock()
	return c.j.cancelled
}

// Start creates a job, emits created and running before it returns (so
// those events precede the command's reply, as in QEMU) and runs fn on its
// own goroutine once start is called by the caller.
func (js *Jobs) Start(id string, typ JobType, fn func(JobCtx) error) (start func(), err error) {
	if !idWellFormed(id) {
		return nil, &Error{Kind: KindJobID, Job: id}
	}
	js.mu.Lock()
	if _, ok := js.jobs[id]; ok {
		js.mu.Unlock()
		return nil, &Error{Kind: KindJobIDInUse, Job: id}
	}
	j := &job{info: JobInfo{ID: id, Type: typ, TotalProgress: 1}, done: make(chan struct{})}
	js.jobs[id] = j
	js.order = append(js.order, id)
	js.setStatus(j, JobCreated)
	js.setStatus(j, JobRunning)
	js.mu.Unlock()
	return func() {
		go func() {
			defer close(j.done)
			err := fn(JobCtx{js, j})
			js.mu.Lock()
			defer js.mu.Unlock()
			if err != nil {
				j.info.Err = err
				js.setStatus(j, JobAborting)
			} else {
				js.setStatus(j, JobWaiting)
				js.setStatus(j, JobPending)
			}
			js.setStatus(j, JobConcluded)
		}()
	}, nil
}

// List is query-jobs.
func (js *Jobs) List() []JobInfo {
	js.mu.Lock()
	defer js.mu.Unlock()
	out := make([]JobInfo, 0, len(js.order))
	for _, id := range js.order {
		out = append(out, js.jobs[id].info)
	}
	return out
}

// Wait blocks until job id has finished running (concluded).
func (js *Jobs) Wait(id string) (JobInfo, error) {
	js.mu.Lock()
	j, ok := js.jobs[id]
	js.mu.Unlock()
	if !ok {
		return JobInfo{}, &Error{Kind: KindJobNotFound, Job: id}
	}
	<-j.done
	js.mu.Lock()
	defer js.mu.Unlock()
	return j.info, nil
}

func verbError(j *job, verb string) error {
	return &Error{Kind: KindJobVerb, Job: j.info.ID, JobState: j.info.Status, Verb: verb}
}

// Dismiss is job-dismiss: a concluded job goes to null and disappears.
func (js *Jobs) Dismiss(id string) error {
	js.mu.Lock()
	defer js.mu.Unlock()
	j, ok := js.jobs[id]
	if !ok {
		return &Error{Kind: KindJobNotFound, Job: id}
	}
	if j.info.Status != JobConcluded {
		return verbError(j, "dismiss")
	}
	js.setStatus(j, JobNull)
	delete(js.jobs, id)
	for i, o := range js.order {
		if o == id {
			js.order = append(js.order[:i], js.order[i+1:]...)
			break
		}
	}
	return nil
}

// Cancel is job-cancel. Snapshot jobs check for it between their steps.
func (js *Jobs) Cancel(id string) error {
	js.mu.Lock()
	defer js.mu.Unlock()
	j, ok := js.jobs[id]
	if !ok {
		return &Error{Kind: KindJobNotFound, Job: id}
	}
	switch j.info.Status {
	case JobCreated, JobRunning, JobWaiting, JobPending:
		j.cancelled = true
		return nil
	}
	return verbError(j, "cancel")
}

package boot

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
)

// Logger writes every line to the console and to the kernel log (kmsg), with
// the step it belongs to, so a failed boot can be read on either.
type Logger struct {
	mu      sync.Mutex
	console io.Writer
	kmsg    io.Writer // nil if /dev/kmsg could not be opened
	Debug   bool
}

// NewLogger logs to console and, if it can be opened, /dev/kmsg.
func NewLogger(console io.Writer) *Logger {
	l := &Logger{console: console}
	if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		l.kmsg = f
	}
	return l
}

// kmsg levels (syslog priorities).
const (
	levelErr   = 3
	levelInfo  = 6
	levelDebug = 7
)

func (l *Logger) log(level int, step, format string, a ...any) {
	if level == levelDebug && !l.Debug {
		return
	}
	msg := fmt.Sprintf(format, a...)
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range strings.Split(msg, "\n") {
		fmt.Fprintf(l.console, "cfsroot: [%s] %s\n", step, line)
		if l.kmsg != nil {
			fmt.Fprintf(l.kmsg, "<%d>cfsroot: [%s] %s\n", level, step, line)
		}
	}
}

// Infof logs progress of step.
func (l *Logger) Infof(step, format string, a ...any) { l.log(levelInfo, step, format, a...) }

// Errorf logs a failure of step.
func (l *Logger) Errorf(step, format string, a ...any) { l.log(levelErr, step, format, a...) }

// Debugf logs details shown only with cfsroot.debug.
func (l *Logger) Debugf(step, format string, a ...any) { l.log(levelDebug, step, format, a...) }

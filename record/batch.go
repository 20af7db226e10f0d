package record

// Batch is a run of records handed to a sink in one write. Records are in
// consumption order; Spans has one entry per partition the batch covers.
// ID is the batch's write-ahead log entry.
type Batch struct {
	ID      uint64
	Records []*Record
	Spans   []Span
}

// ErrorClass says why a record could not be landed. It is written into every
// dead letter and used as a metric label, so the set is small: the
// constants below, and ClassSQLState of the few SQLSTATEs the database
// refuses single rows with outside the data classes.
type ErrorClass string

// The error classes.
const (
	// ClassDecode: the value is not valid JSON or lacks or mistypes a field.
	ClassDecode ErrorClass = "decode"
	// ClassData: the database refused the row for data reasons (SQLSTATE
	// classes 22 and 23: a constraint, a value too long, out of range).
	ClassData ErrorClass = "data"
	// ClassOverflow: the queue was full under the drop_oldest strategy.
	ClassOverflow ErrorClass = "overflow"
	// ClassTransient: the database or broker was unavailable; never a reason
	// to dead-letter a record, but used to classify failures.
	ClassTransient ErrorClass = "transient"
	// ClassFenced: another process owns the partition now.
	ClassFenced ErrorClass = "fenced"
	// ClassTimeout: the row's statement timed out (SQLSTATE 57014) every
	// time, alone.
	ClassTimeout ErrorClass = "timeout"
)

// ClassSQLState is the class of a row the database refused alone with a
// SQLSTATE outside the data classes (54000 always, another only when
// other rows of its table landed): "sqlstate_" and the code, e.g.
// "sqlstate_54000" (a row too large for its index).
func ClassSQLState(code string) ErrorClass { return ErrorClass("sqlstate_" + code) }

// Rejected is a record that will not be landed, with the reason.
type Rejected struct {
	Record *Record
	Class  ErrorClass
	Err    error
}

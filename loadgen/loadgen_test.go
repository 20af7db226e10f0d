package loadgen

import (
	"encoding/json"
	"testing"
)

func TestBarsDeterministicAndClonable(t *testing.T) {
	a, b := NewBars(42, 10, 0.3), NewBars(42, 10, 0.3)
	for range 100 {
		a.Next()
		b.Next()
	}
	c := a.Clone()
	for i := range 1000 {
		x, y, z := a.Next(), b.Next(), c.Next()
		if x != y || x != z {
			t.Fatalf("record %d differs: %+v %+v %+v", i, x, y, z)
		}
	}
}

func TestBarJSONRoundTrips(t *testing.T) {
	g := NewBars(1, 5, 0)
	for range 50 {
		b := g.Next()
		var got struct {
			Symbol                 string
			TS                     string `json:"ts"`
			Open, High, Low, Close float64
			Volume                 int64
		}
		if err := json.Unmarshal(b.JSON(nil), &got); err != nil {
			t.Fatalf("%s: %v", b.JSON(nil), err)
		}
		if got.Symbol != b.Symbol || got.Open != b.Open || got.High != b.High || got.Low != b.Low ||
			got.Close != b.Close || got.Volume != b.Volume || got.TS != b.TS.Format("2006-01-02T15:04:05Z07:00") {
			t.Fatalf("round trip: %+v vs %+v", got, b)
		}
		if b.Low > b.Open || b.Low > b.Close || b.High < b.Open || b.High < b.Close {
			t.Fatalf("not a bar: %+v", b)
		}
	}
}

func TestUpdatesRewriteEarlierKeys(t *testing.T) {
	g := NewBars(3, 20, 0.5)
	keys := map[string]bool{}
	for range 2000 {
		b := g.Next()
		keys[b.Symbol+b.TS.String()] = true
	}
	if len(keys) >= 2000 || len(keys) < 500 {
		t.Fatalf("%d distinct keys of 2000 with half updates", len(keys))
	}
}

// TestGeneratorsAreDeterministicAndUpdate: the same seed gives the same
// records, a clone continues the same stream, and with an update share
// some records rewrite an earlier key.
func TestGeneratorsAreDeterministicAndUpdate(t *testing.T) {
	for _, kind := range Kinds {
		t.Run(kind, func(t *testing.T) {
			a, _ := NewGenerator(kind, 5, 10, 0.5)
			b, _ := NewGenerator(kind, 5, 10, 0.5)
			keys := map[string]bool{}
			for i := range 2000 {
				ka, va := a.NextRecord()
				kb, vb := b.NextRecord()
				if string(ka) != string(kb) || string(va) != string(vb) {
					t.Fatalf("record %d differs under the same seed:\n%s\n%s", i, va, vb)
				}
				keys[string(ka)] = true
			}
			if kind != "bars" && len(keys) >= 2000 { // bars keys are symbols
				t.Errorf("no key repeated among 2000 records with an update share of 0.5")
			}
		})
	}
}

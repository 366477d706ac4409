package driver

import "testing"

func TestSettingOf(t *testing.T) {
	for q, want := range map[string]string{
		"PRAGMA foreign_keys=OFF":                   "foreign_keys",
		"  pragma Foreign_Keys = 0;":                "foreign_keys",
		"/* c */ PRAGMA main.recursive_triggers(1)": "recursive_triggers",
		"-- c\nPRAGMA temp.case_sensitive_like=1":   "case_sensitive_like",
		"PRAGMA foreign_keys":                       "", // a read
		"PRAGMA other.foreign_keys=1":               "", // an attached file's
		"PRAGMA user_version=5":                     "", // a write, forwarded
		"PRAGMA table_info(t)":                      "",
		"SELECT 1":                                  "",
		"PRAGMA":                                    "",
		"BEGIN":                                     "",
	} {
		if got := settingOf(q); got != want {
			t.Errorf("settingOf(%q) = %q, want %q", q, got, want)
		}
	}
}

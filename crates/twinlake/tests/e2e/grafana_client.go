// Replays what Grafana's PostgreSQL data source sends, with the drivers Grafana uses:
// lib/pq (Grafana <= 12.3: database/sql, ping ";", queries without arguments go over the
// simple protocol) and pgconn (the protocol layer of pgx, which Grafana 12.4+ uses: ping
// "-- ping", PgConn.Exec for every query).
//
// Usage: grafana_client pq|pgconn '<connection string>' < queries.json
// Reads a JSON array of SQL texts; writes one JSON object: the ping's outcome and, per query,
// its columns (name and type), rows (as text) and command tag, or its error with SQLSTATE.
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/jackc/pgconn"
	"github.com/lib/pq"
)

type column struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

type result struct {
	Columns []column    `json:"columns,omitempty"`
	Rows    [][]*string `json:"rows"`
	Tag     string      `json:"tag,omitempty"`
	Error   string      `json:"error,omitempty"`
	Code    string      `json:"code,omitempty"`
	Sets    int         `json:"sets"`
}

type report struct {
	Ping    string   `json:"ping"`
	Results []result `json:"results"`
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: grafana_client pq|pgconn CONNSTRING < queries.json")
		os.Exit(2)
	}
	var queries []string
	if err := json.NewDecoder(os.Stdin).Decode(&queries); err != nil {
		fmt.Fprintln(os.Stderr, "queries:", err)
		os.Exit(2)
	}
	var out report
	var err error
	switch os.Args[1] {
	case "pq":
		out, err = withPq(os.Args[2], queries)
	case "pgconn":
		out, err = withPgconn(os.Args[2], queries)
	default:
		err = fmt.Errorf("unknown driver %s", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

func withPq(dsn string, queries []string) (report, error) {
	out := report{Ping: "ok"}
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		return out, err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if err := db.Ping(); err != nil {
		out.Ping = err.Error()
		return out, nil
	}
	for _, query := range queries {
		out.Results = append(out.Results, pqQuery(db, query))
	}
	return out, nil
}

func pqQuery(db *sql.DB, query string) result {
	var r result
	rows, err := db.Query(query)
	if err != nil {
		return failed(err)
	}
	defer rows.Close()
	for {
		r.Sets++
		types, err := rows.ColumnTypes()
		if err != nil {
			return failed(err)
		}
		r.Columns = nil
		for _, t := range types {
			r.Columns = append(r.Columns, column{t.Name(), t.DatabaseTypeName()})
		}
		for rows.Next() {
			values := make([]sql.RawBytes, len(types))
			pointers := make([]any, len(types))
			for i := range values {
				pointers[i] = &values[i]
			}
			if err := rows.Scan(pointers...); err != nil {
				return failed(err)
			}
			row := make([]*string, len(values))
			for i, v := range values {
				if v != nil {
					text := string(v)
					row[i] = &text
				}
			}
			r.Rows = append(r.Rows, row)
		}
		if !rows.NextResultSet() {
			break
		}
	}
	if err := rows.Err(); err != nil {
		return failed(err)
	}
	return r
}

func withPgconn(dsn string, queries []string) (report, error) {
	out := report{Ping: "ok"}
	ctx := context.Background()
	conn, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		return out, err
	}
	defer conn.Close(ctx)
	// pgx v5's Ping: an empty statement, answered with EmptyQueryResponse.
	if _, err := conn.Exec(ctx, "-- ping").ReadAll(); err != nil {
		out.Ping = err.Error()
		return out, nil
	}
	for _, query := range queries {
		out.Results = append(out.Results, pgconnQuery(ctx, conn, query))
	}
	return out, nil
}

func pgconnQuery(ctx context.Context, conn *pgconn.PgConn, query string) result {
	var r result
	// Read result by result, as pgx does: pgconn's ReadAll drops the columns of an empty one.
	multi := conn.Exec(ctx, query)
	for multi.NextResult() {
		reader := multi.ResultReader()
		r.Sets++
		// pgx keeps the results whose tag starts with SELECT: the last of them is shown.
		r.Columns = nil
		for _, field := range reader.FieldDescriptions() {
			r.Columns = append(r.Columns, column{string(field.Name), fmt.Sprint(field.DataTypeOID)})
		}
		r.Rows = nil
		for reader.NextRow() {
			values := reader.Values()
			row := make([]*string, len(values))
			for i, v := range values {
				if v != nil {
					text := string(v)
					row[i] = &text
				}
			}
			r.Rows = append(r.Rows, row)
		}
		tag, err := reader.Close()
		if err != nil {
			multi.Close()
			return failed(err)
		}
		r.Tag = tag.String()
	}
	if err := multi.Close(); err != nil {
		return failed(err)
	}
	return r
}

func failed(err error) result {
	r := result{Error: err.Error()}
	var pqError *pq.Error
	var pgError *pgconn.PgError
	if errors.As(err, &pqError) {
		r.Code = string(pqError.Code)
	} else if errors.As(err, &pgError) {
		r.Code = pgError.Code
	}
	return r
}

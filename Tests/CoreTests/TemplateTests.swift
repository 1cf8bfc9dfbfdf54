import Glibc
import Logging
import SecretsCore
import Testing

/// Templates (`[[files]]` with `template` or `template_file`): the grammar, each helper byte for byte, config errors
/// at the template's own line, and rendering from views (the mount tests read them through FUSE).
@Suite("templates")
struct TemplateTests {
    func render(_ text: String, _ values: [String: SecretValue]) throws -> String {
        let template = try SecretTemplate(parsing: text)
        let bytes = try template.render { reference throws(SecretsError) in
            guard let value = values[reference.description] else { throw SecretsError(.notFound, "no \(reference)") }
            return value
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    @Test("holes, literals, comments and text pass through byte for byte")
    func grammar() throws {
        #expect(try render("a{{ X }}b{{\"{{\"}}c{{! note }}d\n{{Y}}", ["X": .string("1"), "Y": .int(2)]) == "a1b{{cd\n2")
        #expect(try render("ü {{x.y-z_1}}", ["x.y-z_1": .string("é")]) == "ü é")
        #expect(try render("{{other/default/K}}", ["other/default/K": .string("k")]) == "k")
        let template = try SecretTemplate(parsing: "{{A}}{{url(A)}}{{pem(B, s/e/C)}}")
        #expect(template.references.map(\.reference.description) == ["A", "B", "s/e/C"])
        #expect(template.references.map { "\($0.line):\($0.column)" } == ["1:3", "1:22", "1:25"])
        #expect(try SecretTemplate(parsing: "{{vault/Production/K}}").references.map(\.reference.description) == ["vault/production/K"])
    }

    @Test("each helper: url, json, base64, base64decode, pem, trim, pgpass, sh")
    func helpers() throws {
        let hostile = SecretValue.string("p@ss:w/rd?#%\\ 'q' ü")
        #expect(try render("{{url(P)}}", ["P": hostile]) == "p%40ss%3Aw%2Frd%3F%23%25%5C%20%27q%27%20%C3%BC")
        #expect(try render("{{json(P)}} {{json(N)}} {{json(B)}}", ["P": hostile, "N": .int(5), "B": .bool(true)])
            == "\"p@ss:w/rd?#%\\\\ 'q' ü\" 5 true")
        #expect(try render("{{pgpass(P)}}", ["P": hostile]) == "p@ss\\:w/rd?#%\\\\ 'q' ü")
        #expect(try render("{{sh(P)}}", ["P": hostile]) == "'p@ss:w/rd?#%\\ '\\''q'\\'' ü'")
        #expect(try render("[{{trim(P)}}]", ["P": .string(" \n x y\t\n")]) == "[x y]")
        #expect(try render("{{base64(P)}}", ["P": .string("any carnal pleas")]) == "YW55IGNhcm5hbCBwbGVhcw==")
        #expect(try render("{{base64(P)}}", ["P": .string("any carnal pleasu")]) == "YW55IGNhcm5hbCBwbGVhc3U=")
        #expect(try render("{{base64decode(P)}}", ["P": .string("YW55IGNhcm5hbCBwbGVhc3U")]) == "any carnal pleasu")
        #expect(try render("{{base64decode(P)}}", ["P": .string("YW55IGNh\ncm5hbA==")]) == "any carnal")
        // Every byte value survives a round trip.
        let all = (0...255).map { UInt8($0) }
        let encoded = try SecretTemplate(parsing: "{{base64(P)}}").render { _ throws(SecretsError) in .bytes(all) }
        let decoded = try SecretTemplate(parsing: "{{base64decode(P)}}").render { _ throws(SecretsError) in .bytes(encoded) }
        #expect(decoded == all && encoded.count == 344 && encoded.suffix(2) == Array("==".utf8))
        let urlSafe = try render("{{base64(base64decode(P))}}", ["P": .string("-_-_")])
        #expect(urlSafe == "+/+/")
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
        #expect(try render("{{pem(C, K)}}", ["C": .string(pem + "\n\n"), "K": .string("\n" + pem)]) == pem + "\n" + pem + "\n")
    }

    @Test("a helper's failure names where its input came from, never the value")
    func helperFailures() throws {
        for (text, fragment) in [
            ("{{base64decode(P)}}", "base64decode: 'P' is not base64"), ("{{pem(P)}}", "pem: 'P' is not a PEM block"),
            ("{{json(base64decode(Q))}}", "json: base64decode(...) is not UTF-8 text"),
        ] {
            do {
                _ = try render(text, ["P": .string("hidden*value"), "Q": .string("//79")])
                Issue.record("rendered \(text)")
            } catch {
                #expect("\(error)".contains(fragment) && !"\(error)".contains("hidden"), "\(error)")
            }
        }
    }

    @Test("syntax errors at the template's own line and column")
    func syntaxErrors() {
        for (text, position, fragment) in [
            ("a\n  {{urlx(A)}}", "2:5", "no helper 'urlx'"), ("{{A", "1:1", "never closed"), ("x {{{A}}}", "1:5", "HTML"),
            ("{{url(A, B)}}", "1:3", "takes one argument"), ("{{a/b}}", "1:3", "<store or scope>/<env>/<key>"),
            ("{{}}", "1:3", "empty"), ("a }} b", "1:3", "without an opening"), ("{{\"x}}", "1:3", "never closed"),
            ("{{url(A}}", "1:8", "expected ',' or ')'"), ("{{A B}}", "1:5", "expected '}}'"), ("{{! x", "1:1", "comment"),
            ("{{pem()}}", "1:7", "cannot start a name"), ("{{$X}}", "1:3", "cannot start a name"),
        ] {
            do {
                _ = try SecretTemplate(parsing: text)
                Issue.record("parsed \(text)")
            } catch {
                #expect("\(error.line):\(error.column)" == position, "\(text): \(error)")
                #expect(error.message.contains(fragment), "\(text): \(error)")
            }
        }
    }

    @Test("config: template and template_file, their errors at file:line:column with the template's own line")
    func configErrors() throws {
        let folder = "/tmp/secretsfs-template-\(getpid())"
        mkdir(folder, 0o700)
        defer { _ = system("rm -rf '\(folder)'") }
        try FileIO.writeAtomically(folder + "/bad.tmpl", bytes: Array("line one\n  {{nohelper(A)}}\n".utf8))
        try FileIO.writeAtomically(folder + "/ref.tmpl", bytes: Array("{{A}}\n{{elsewhere/x/B}}\n".utf8))
        for (extra, prefix, fragment) in [
            ("[[files]]\npath = \"fake/production/a\"\ntemplate = \"x\\n{{A\"", "test.toml:", "template line 2, column 1"),
            ("[[files]]\npath = \"fake/production/a\"\ntemplate = \"{{nope/e/K}}\"", "test.toml:",
             "template line 1, column 3: 'nope/e/K': 'nope' is not a configured store or scope"),
            ("[[files]]\npath = \"fake/production/a\"\ntemplate_file = \"\(folder)/bad.tmpl\"", folder + "/bad.tmpl:2:5:",
             "no helper 'nohelper'"),
            ("[[files]]\npath = \"fake/production/a\"\ntemplate_file = \"\(folder)/ref.tmpl\"", folder + "/ref.tmpl:2:3:",
             "'elsewhere' is not a configured store or scope"),
            ("[[files]]\npath = \"fake/production/a\"\ntemplate_file = \"\(folder)/none.tmpl\"", "test.toml:", "cannot read template_file"),
            ("[[files]]\npath = \"fake/production/a\"\ntemplate = \"x\"\nformat = \"json\"", "test.toml:", "no format with template"),
            ("[[files]]\npath = \"fake/production/a\"\ntemplate = \"x\"\ntemplate_file = \"y\"", "test.toml:", "not both"),
            ("[[files]]\npath = \"fake/a\"\ntemplate = \"x\"", "test.toml:", "renders one env"),
        ] {
            do {
                _ = try makeConfig("\n" + extra)
                Issue.record("accepted: \(extra)")
            } catch {
                let text = "\(error)"
                #expect(text.hasPrefix(prefix) && text.contains(fragment), "\(text)")
            }
        }
    }

    @Test("an error in the second [[files]] points at that element's lines, not the first one's")
    func secondElementLocation() throws {
        do {
            _ = try makeConfig("""

                [[files]]
                path = "fake/production/one"
                template = "{{A}}"

                [[files]]
                path = "fake/production/two"
                template = "{{url(A}}"
                """)
            Issue.record("accepted")
        } catch {
            // makeConfig's text puts the first element's template on line 14, the second's on line 18.
            #expect("\(error)".hasPrefix("test.toml:18:1: template line 1, column 8"), "\(error)")
        }
    }

    @Test("rendered from views: own env, another env, a missing key fails naming it, fresh when any key used is")
    func rendering() throws {
        let store = FakeStore(name: "fake", envs: [
            "production": ["USER": .string("app"), "PASS": .string("s3:cr@t"), "FRESH_T": .string("t")],
            "default": ["HOST": .string("db.internal")],
        ])
        let config = try makeConfig("""

            [[files]]
            path = "fake/production/db.url"
            template = "postgres://{{url(USER)}}:{{url(PASS)}}@{{fake/default/HOST}}/app"
            [[files]]
            path = "fake/production/missing"
            template = "{{USER}}:{{NOPE}}"
            [[files]]
            path = "fake/production/fresh"
            template = "{{FRESH_T}}"
            """)
        let resolver = try Resolver(config: config, stores: ["fake": store])
        let core = FileSystemCore(config: config, resolver: resolver, logger: Logger(label: "test"))
        #expect(try core.apiRead(top: "fake", env: "production", key: "db.url").utf8String()
            == "postgres://app:s3%3Acr%40t@db.internal/app")
        do {
            _ = try core.apiRead(top: "fake", env: "production", key: "missing")
            Issue.record("rendered a template with a missing key")
        } catch {
            #expect(error.code == .notFound && "\(error)".contains("'NOPE'") && !"\(error)".contains("app"), "\(error)")
        }
        let file = try #require(resolver.rendered.file(top: "fake", env: "production", name: "db.url"))
        #expect(file.keys(of: try resolver.view(top: "fake", env: "production")) == ["USER", "PASS", "fake/default/HOST"])
        #expect(!resolver.isFresh(.init(top: "fake", env: "production", key: "db.url"), in: nil))
        #expect(resolver.isFresh(.init(top: "fake", env: "production", key: "fresh"), in: nil))
        // Listed with the env's keys (the secrets API leaves out the one that cannot render).
        let listed = try core.apiList(top: "fake", env: "production").map(\.0)
        #expect(listed.contains("db.url") && listed.contains("fresh") && !listed.contains("missing"), "\(listed)")
    }
}

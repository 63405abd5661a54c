// An independent JWT implementation for the interop tests: panva's `jose` (npm), driven by
// JSON on stdin, answering JSON on stdout (tests/test_assertions_interop.py).
//
//   {"op": "sign", "jwk": {private JWK}, "alg": "ES256" | "RS256", "claims": {...}, "kid": "..."}
//     -> {"token": "..."}
//   {"op": "verify", "jwks": {public JWK Set}, "token": "...", "issuer": "...", "audience": "..."}
//     -> {"ok": true, "claims": {...}} or {"ok": false, "error": "..."}
//
// A JSON array of requests is answered with an array of answers, in order (one Node start for
// many tokens). `jose` is loaded from the node_modules of JOSE_PACKAGE_DIR (default:
// integrations/idp, whose package.json pins it), so no second install is needed.
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const packageDir = resolve(process.env.JOSE_PACKAGE_DIR ?? join(here, "..", "..", "integrations", "idp"));
const jose = await import(pathToFileURL(createRequire(join(packageDir, "package.json")).resolve("jose")).href);

async function sign({ jwk, alg, claims, kid }) {
  const key = await jose.importJWK(jwk, alg);
  const header = { alg, typ: "JWT" };
  if (kid !== undefined && kid !== null) header.kid = kid;
  // The claims are taken as given (iat, exp, iss, aud included): the test decides them.
  const token = await new jose.SignJWT(claims).setProtectedHeader(header).sign(key);
  return { token };
}

async function verify({ jwks, token, issuer, audience, algorithms }) {
  try {
    const keys = jose.createLocalJWKSet(jwks);
    const { payload, protectedHeader } = await jose.jwtVerify(token, keys, {
      issuer,
      audience,
      algorithms: algorithms ?? ["ES256", "RS256"],
      requiredClaims: ["iat", "exp"],
    });
    return { ok: true, claims: payload, header: protectedHeader };
  } catch (error) {
    return { ok: false, error: `${error.code ?? error.name}: ${error.message}` };
  }
}

async function handle(request) {
  switch (request?.op) {
    case "sign":
      return sign(request);
    case "verify":
      return verify(request);
    default:
      return { ok: false, error: `unknown op ${JSON.stringify(request?.op)}` };
  }
}

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const input = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const output = Array.isArray(input)
  ? await Promise.all(input.map(handle))
  : await handle(input);
process.stdout.write(JSON.stringify(output));

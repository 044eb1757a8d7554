-- wrk script: POST the AdmissionReview in $BODY as application/json.
local path = os.getenv("BODY") or error("BODY must name the review to post")
local file = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
wrk.headers["Content-Type"] = "application/json"
file:close()

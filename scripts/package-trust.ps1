# Offline package trust for Windows PowerShell 5.1 and PowerShell 7, dot-sourced by load-images.ps1 and
# install.ps1; step for step with package-trust.sh. The key that verifies a package never comes from
# the package: the vendor's certificate (vendor_package.crt) or its sha256 fingerprint reaches the site
# out of band. Verification uses only .NET Framework (X509Certificate2, RSA-PSS over SHA-256): no openssl.
$script:NoKeySentence = 'no vendor key given: pass -VendorKey vendor_package.crt or -VendorFingerprint HEX, which the vendor sends with your licence token (never trust a key from inside the package).'

function Get-VendorCertificate([string]$Path) {
    try { return New-Object System.Security.Cryptography.X509Certificates.X509Certificate2 -ArgumentList (Resolve-Path -LiteralPath $Path).Path }
    catch { throw "$Path is not the vendor's certificate (vendor_package.crt, PEM)." }
}

# sha256 of the certificate's DER, 64 lower-case hex digits.
function Get-CertFingerprint([string]$Path) {
    $sha = [System.Security.Cryptography.SHA256]::Create()
    try { return (($sha.ComputeHash((Get-VendorCertificate $Path).RawData) | ForEach-Object { $_.ToString('x2') }) -join '') }
    finally { $sha.Dispose() }
}

# $true when SigFile is the vendor's RSA-PSS/SHA-256 signature over File (hashed as a stream: packages are GBs).
function Test-VendorSignature([string]$CertPath, [string]$File, [string]$SigFile) {
    $rsa = [System.Security.Cryptography.X509Certificates.RSACertificateExtensions]::GetRSAPublicKey((Get-VendorCertificate $CertPath))
    if (-not $rsa) { return $false }
    $sha = [System.Security.Cryptography.SHA256]::Create()
    $stream = [System.IO.File]::OpenRead((Resolve-Path -LiteralPath $File).Path)
    try { $hash = $sha.ComputeHash($stream) } finally { $stream.Dispose(); $sha.Dispose() }
    $signature = [System.IO.File]::ReadAllBytes((Resolve-Path -LiteralPath $SigFile).Path)
    return $rsa.VerifyHash($hash, $signature, [System.Security.Cryptography.HashAlgorithmName]::SHA256,
                           [System.Security.Cryptography.RSASignaturePadding]::Pss)
}

function ConvertTo-Fingerprint([string]$Value) { return ($Value -replace '[:\s]', '').ToLowerInvariant() }

# The certificate to verify with, from -VendorKey or from the package when -VendorFingerprint matches it.
function Resolve-VendorCertificate([string]$Package, [string]$VendorKey, [string]$VendorFingerprint) {
    if ($VendorKey) {
        if (-not (Test-Path -LiteralPath $VendorKey -PathType Leaf)) { throw "-VendorKey $VendorKey does not exist; use the vendor_package.crt the vendor sent with your token." }
        $actual = Get-CertFingerprint $VendorKey
        if ($VendorFingerprint -and $actual -ne (ConvertTo-Fingerprint $VendorFingerprint)) {
            throw "-VendorKey $VendorKey does not have the fingerprint given with -VendorFingerprint; ask the vendor which is right."
        }
        return (Resolve-Path -LiteralPath $VendorKey).Path
    }
    if ($VendorFingerprint) {
        $wanted = ConvertTo-Fingerprint $VendorFingerprint
        if ($wanted -notmatch '^[0-9a-f]{64}$') { throw '-VendorFingerprint must be the 64 hex digits printed on the delivery note.' }
        $inside = Join-Path $Package 'vendor_package.crt'
        if (-not (Test-Path -LiteralPath $inside)) { throw 'the package holds no vendor_package.crt to compare with the fingerprint; pass -VendorKey instead.' }
        if ((Get-CertFingerprint $inside) -ne $wanted) { throw "the package's signing certificate does not match the fingerprint from the vendor; do not install this package." }
        return $inside
    }
    throw $script:NoKeySentence
}

# The lines of SHA256SUMS as they are on disk: bytes, not Get-Content, which would drop a BOM and split
# on a lone CR (as package-trust.sh, a line holding either is refused by the format check).
function Read-SumsLines([string]$Package) {
    # Latin-1 maps each byte to one character, so any byte outside printable ASCII stays visible to the check.
    $text = [System.Text.Encoding]::GetEncoding(28591).GetString([System.IO.File]::ReadAllBytes((Join-Path $Package 'SHA256SUMS')))
    if ($text.EndsWith("`n")) { $text = $text.Substring(0, $text.Length - 1) }
    if ($text.Length -eq 0) { return ,@() }
    return ,($text -split "`n")
}

# The paths SHA256SUMS lists, with '/' separators (after Test-Package: each is portable).
function Get-ListedFiles([string]$Package) {
    foreach ($line in (Read-SumsLines $Package)) { ($line -split '  ', 2)[1] }
}

# A name for a sentence: control and non-ASCII characters shown as \xNN, so it stays one line.
function Format-Name([string]$Name) {
    return [regex]::Replace($Name, '[^\x20-\x7E]', { param($m) '\x{0:x2}' -f [int][char]$m.Value })
}

# Every entry under Root is a plain file or folder with a portable name (letters, digits, '.', '_', '-',
# '/'), walked one folder at a time so that no link or junction is followed. As check_entries in bash.
function Test-PackageEntries([string]$Root) {
    $folders = New-Object System.Collections.Generic.Queue[string]
    $folders.Enqueue($Root)
    while ($folders.Count -gt 0) {
        foreach ($item in Get-ChildItem -LiteralPath $folders.Dequeue() -Force) {
            $relative = $item.FullName.Substring($Root.Length + 1) -replace '\\', '/'
            # \z, not $: in .NET, $ also matches before a final line break ('x`n' would pass).
            if ($relative -cnotmatch '^[A-Za-z0-9._/-]+\z') {
                throw "the package holds an entry named $(Format-Name $relative), which has a character other than letters, digits, '.', '_', '-' and '/'; do not install this package."
            }
            $odd = [System.IO.FileAttributes]::ReparsePoint -bor [System.IO.FileAttributes]::Device
            if (($item.Attributes -band $odd) -or -not ($item -is [System.IO.FileInfo] -or $item -is [System.IO.DirectoryInfo])) {
                throw "the package holds $relative, which is not a plain file; do not install this package."
            }
            if ($item.PSIsContainer) { $folders.Enqueue($item.FullName) }
        }
    }
}

# Only plain files and folders with portable names, the signature over SHA256SUMS, its lines, no file it
# does not list, every checksum. Changes nothing on the host; step for step with verify_package.
function Test-Package([string]$Package, [string]$CertPath) {
    $sums = Join-Path $Package 'SHA256SUMS'
    $sig = Join-Path $Package 'SHA256SUMS.sig'
    if (-not (Test-Path -LiteralPath $sums -PathType Leaf) -or -not (Test-Path -LiteralPath $sig -PathType Leaf)) { throw "$Package has no SHA256SUMS or SHA256SUMS.sig; is this an unpacked chexnet-offline package?" }
    $root = (Resolve-Path -LiteralPath $Package).Path.TrimEnd('\', '/')
    # First, so that nothing below opens a link or device (SHA256SUMS itself included).
    Test-PackageEntries $root
    if (-not (Test-VendorSignature $CertPath $sums $sig)) { throw "the vendor signature over SHA256SUMS does not verify with $CertPath; do not install this package." }
    $expected = @{}  # keys compare without case, as Windows paths do: a path listed twice either way is refused
    $lines = Read-SumsLines $Package
    if ($lines.Count -eq 0) { throw "SHA256SUMS holds a line that is not '<sha256>  <relative path>'; do not install this package." }
    foreach ($line in $lines) {
        if ($line -cnotmatch '^[0-9a-f]{64}  [A-Za-z0-9_.][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)*\z' -or $line -cmatch '(  |/)\.\.?(/|\z)') {
            throw "SHA256SUMS holds a line that is not '<sha256>  <relative path>'; do not install this package."
        }
    }
    foreach ($line in $lines) {
        $hash, $file = $line -split '  ', 2
        if ($expected.ContainsKey($file)) { throw "SHA256SUMS lists $file more than once; do not install this package." }
        $expected[$file] = $hash
    }
    foreach ($item in Get-ChildItem -LiteralPath $root -Recurse -Force -File) {
        $relative = $item.FullName.Substring($root.Length + 1) -replace '\\', '/'
        if ($relative -ceq 'SHA256SUMS' -or $relative -ceq 'SHA256SUMS.sig') { continue }
        if (-not $expected.ContainsKey($relative)) { throw "the package holds $relative, which SHA256SUMS does not list; do not install this package." }
    }
    foreach ($file in $expected.Keys) {
        $path = Join-Path $root $file
        if (-not (Test-Path -LiteralPath $path -PathType Leaf)) { throw "a file of the package is damaged or missing ($file); copy the package again." }
        if ((Get-FileHash -LiteralPath $path -Algorithm SHA256).Hash.ToLowerInvariant() -ne $expected[$file]) {
            throw "a file of the package is damaged or missing ($file); copy the package again."
        }
    }
    Write-Host "==> package verified: vendor signature OK (certificate fingerprint $(Get-CertFingerprint $CertPath))"
}

# docker load the image archives SHA256SUMS lists (after Test-Package).
function Import-PackageImages([string]$Package) {
    foreach ($archive in Get-ListedFiles $Package) {
        if ($archive -notlike 'images/*.tar.gz') { continue }
        Write-Host "==> docker load $archive"
        & docker load -i (Join-Path $Package $archive)
        if ($LASTEXITCODE -ne 0) { throw "docker load $archive failed." }
    }
}
